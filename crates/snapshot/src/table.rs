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
    /// another version was read with a stale column list. A rewrite of the
    /// table (`VACUUM FULL`, `CLUSTER`, `TRUNCATE`) changes it too.
    pub shape_version: String,
    /// Where the rows lie, when the table can be read by block range (see
    /// [`BlockLayout`]); `None`: it is read in key order.
    pub blocks: Option<BlockLayout>,
}

/// A plain table read by ranges of its heap blocks (`ctid` ranges, a TID
/// range scan: as cheap as a sequential scan, where a key-ordered read
/// walks the key index). The watermark merge works on the keys of the rows
/// a chunk holds, whichever way they were chosen, so a chunk stays exact;
/// what block ranges add is that a row can move between them:
///
/// - A row not changed since the copy began stays where it is (only an
///   update moves a row; `VACUUM` does not), so the chunk of its block
///   reads it. Every row the copy began with lies below [`BlockLayout::end`].
/// - A row an update moved (to a block copied already or not) reached the
///   sink through the stream, as a whole row: an update carries every value
///   except TOASTed ones left unchanged, and these exist only if the
///   table's TOAST relation held values when the copy began, or a streamed
///   change wrote them (whole). So only tables whose TOAST relation is
///   empty (or absent) when their copy begins are read by block range.
/// - A rewrite moves every row: it gives the table a new file, so a copy
///   stored under another file starts over (a rewrite during the copy
///   changes [`SnapshotTable::shape_version`], which ends the attempt).
///
/// Partitioned tables and tables with TOASTed values are read in key order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockLayout {
    /// The table's file (`pg_class.relfilenode`) when the copy began.
    pub file: String,
    /// Blocks the table had when it was described: the copy reads blocks
    /// `0..end`.
    pub end: u64,
    /// Blocks per chunk: about `chunk_rows` rows by the table's statistics.
    pub per_chunk: u64,
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
        SnapshotTable::describe_for(connection, table, publication, types, None).await
    }

    /// [`SnapshotTable::describe`], and whether the table can be read by
    /// block range, in chunks of about `chunk_rows` rows (`None`: only in
    /// key order).
    pub async fn describe_for(
        connection: &mut ReplicationConnection,
        table: &TableName,
        publication: Option<&str>,
        types: Arc<TypeRegistry>,
        chunk_rows: Option<usize>,
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
        let blocks = match chunk_rows {
            // TID range scans came with PostgreSQL 14.
            Some(chunk_rows) if connection.server_version() >= 140000 => {
                block_layout(connection, table, oid, chunk_rows).await?
            }
            _ => None,
        };
        let schema = TableSchema { oid, table: table.clone(), replica_identity, columns, types };
        Ok(SnapshotTable {
            schema: Arc::new(schema),
            key_positions: keys.iter().map(|(_, position, _)| *position).collect(),
            key_types: keys.into_iter().map(|(_, _, type_name)| type_name).collect(),
            shape_version,
            blocks,
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

/// The [`BlockLayout`] of table `oid`, if it is a plain table whose TOAST
/// relation is empty or absent.
async fn block_layout(
    connection: &mut ReplicationConnection,
    table: &TableName,
    oid: Oid,
    chunk_rows: usize,
) -> Result<Option<BlockLayout>, SnapshotError> {
    let sql = format!(
        "SELECT c.relfilenode::text AS file, \
         (pg_catalog.pg_relation_size(c.oid) / pg_catalog.current_setting('block_size')::bigint)::text AS blocks, \
         c.reltuples::float8::text AS reltuples, c.relpages::text AS relpages \
         FROM pg_catalog.pg_class c \
         WHERE c.oid = {oid} AND c.relkind = 'r' \
         AND (c.reltoastrelid = 0 OR pg_catalog.pg_relation_size(c.reltoastrelid) = 0)",
        oid = oid.0
    );
    let result = connection.simple_query(&sql).await.map_err(|source| SnapshotError::Source {
        table: table.clone(),
        doing: "reading its size from the catalog".to_owned(),
        source,
    })?;
    let (Some(file), Some(end)) =
        (result.get(0, "file"), result.get(0, "blocks").and_then(|text| text.parse::<u64>().ok()))
    else {
        return Ok(None);
    };
    let reltuples = result.get(0, "reltuples").and_then(|text| text.parse::<f64>().ok()).unwrap_or(-1.0);
    let relpages = result.get(0, "relpages").and_then(|text| text.parse::<f64>().ok()).unwrap_or(0.0);
    Ok(Some(BlockLayout { file: file.to_owned(), end, per_chunk: blocks_per_chunk(chunk_rows, reltuples, relpages) }))
}

/// Blocks that hold about `chunk_rows` rows by the table's statistics; 1,024
/// (8 MB of heap) without statistics, and never more.
fn blocks_per_chunk(chunk_rows: usize, reltuples: f64, relpages: f64) -> u64 {
    const MOST: u64 = 1024;
    if reltuples <= 0.0 || relpages <= 0.0 {
        return MOST;
    }
    let rows_per_block = (reltuples / relpages).max(1.0);
    ((chunk_rows as f64 / rows_per_block).ceil() as u64).clamp(1, MOST)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_chunks_hold_about_chunk_rows_rows() {
        assert_eq!(blocks_per_chunk(20_000, 1_000_000.0, 20_000.0), 400);
        assert_eq!(blocks_per_chunk(20_000, -1.0, 0.0), 1024, "no statistics");
        assert_eq!(blocks_per_chunk(20_000, 10.0, 100.0), 1024, "sparse: at most 8 MB of heap");
        assert_eq!(blocks_per_chunk(1, 1_000_000.0, 20_000.0), 1);
    }
}
