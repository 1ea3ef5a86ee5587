//! The table reader: one chunk of a table at a time, in key order.
//!
//! Each chunk is one short `REPEATABLE READ` transaction:
//!
//! ```sql
//! SELECT c1, c2, … FROM t WHERE (k1, k2) > ('…'::type1, '…'::type2) ORDER BY k1, k2 LIMIT n
//! ```
//!
//! so no transaction stays open between chunks (the primary's vacuum is
//! never held back for long) and a read can resume after any key. Values
//! come in text format over a connection with the replication stream's
//! session settings (dates, intervals, floats, bytea, time zone), so each
//! value is byte for byte what pgoutput would send for the same row, and a
//! chunk's rows become [`ColumnValue::Text`] exactly as a streamed insert's.
//!
//! Invariants: rows come in strictly increasing key order; a chunk holds at
//! least one row unless the table has no row after the resume key; the
//! chunk's [`Chunk::last_key`] is the key to resume after.

use bytes::Bytes;
use pg_replication::ReplicationConnection;
use pgfanout_core::{ColumnValue, Row};
use postgres_protocol::escape::escape_literal;

use crate::error::SnapshotError;
use crate::table::SnapshotTable;

/// How large one chunk may grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLimits {
    /// At most this many rows (at least 1).
    pub rows: usize,
    /// At most about this many bytes of values; the row that crosses the
    /// limit ends the chunk, so a chunk always holds at least one row.
    pub bytes: usize,
}

impl Default for ChunkLimits {
    fn default() -> Self {
        ChunkLimits { rows: 5_000, bytes: 8 * 1024 * 1024 }
    }
}

/// The key of a row, one text value per key column in key order.
pub type KeyText = Vec<String>;

/// Which transactions a chunk's read could see: PostgreSQL's
/// `pg_current_snapshot()` of the read's transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadVisibility {
    /// Every transaction id below this had finished when the read began.
    pub xmin: u64,
    /// Every transaction id from this one on had not yet started.
    pub xmax: u64,
    /// Transactions in between still in progress (invisible to the read).
    pub in_progress: Vec<u64>,
}

impl ReadVisibility {
    /// Parses `pg_current_snapshot()`'s text, `xmin:xmax:xip,…`.
    pub fn parse(text: &str) -> Option<ReadVisibility> {
        let mut parts = text.split(':');
        let xmin = parts.next()?.parse().ok()?;
        let xmax = parts.next()?.parse().ok()?;
        let in_progress = match parts.next()? {
            "" => Vec::new(),
            list => list.split(',').map(|xid| xid.parse().ok()).collect::<Option<Vec<u64>>>()?,
        };
        Some(ReadVisibility { xmin, xmax, in_progress })
    }
}

/// One chunk of rows in key order.
#[derive(Debug, Clone, Default)]
pub struct Chunk {
    /// The rows, each in the table's column order, as text values.
    pub rows: Vec<Row>,
    /// The key of the last row, to resume after; `None` when empty.
    pub last_key: Option<KeyText>,
    /// Whether the table may hold rows after this chunk (false once a read
    /// came back short of its limits).
    pub more: bool,
    /// Bytes of values in the chunk.
    pub bytes: usize,
    /// What the read could see.
    pub visibility: ReadVisibility,
    /// The table's `pg_class` version the read saw (see
    /// [`SnapshotTable::shape_version`]); `None` if the table is gone.
    pub shape_version: Option<String>,
}

/// Reads one table in chunks.
#[derive(Debug, Clone)]
pub struct TableReader {
    table: SnapshotTable,
    limits: ChunkLimits,
    select: String,
    order: String,
}

impl TableReader {
    /// A reader of `table` in chunks within `limits`.
    pub fn new(table: SnapshotTable, limits: ChunkLimits) -> TableReader {
        let limits = ChunkLimits { rows: limits.rows.max(1), bytes: limits.bytes.max(1) };
        let select = format!("SELECT {} FROM {}", table.quoted_column_list(), table.quoted_name());
        let order = table.quoted_key_list();
        TableReader { table, limits, select, order }
    }

    /// The table read.
    pub fn table(&self) -> &SnapshotTable {
        &self.table
    }

    /// The key of `row` as text, in key order; `None` if a key value is
    /// missing (NULL cannot be in a key, so only a malformed row).
    pub fn key_of(&self, row: &Row) -> Option<KeyText> {
        self.table
            .key_positions
            .iter()
            .map(|&position| match row.get(position)? {
                ColumnValue::Text(bytes) => std::str::from_utf8(bytes).ok().map(str::to_owned),
                _ => None,
            })
            .collect()
    }

    /// A key as a row of typed SQL literals, `('…'::type1, '…'::type2)`.
    fn key_literals(&self, key: &[String]) -> String {
        let literals = key
            .iter()
            .zip(&self.table.key_types)
            .map(|(value, type_name)| format!("{}::{type_name}", escape_literal(value)))
            .collect::<Vec<_>>()
            .join(", ");
        format!("({literals})")
    }

    /// The SQL of the chunk after `after` (the first chunk for `None`).
    pub fn chunk_sql(&self, after: Option<&[String]>) -> String {
        let condition = match after {
            Some(key) => format!(" WHERE ({}) > {}", self.order, self.key_literals(key)),
            None => String::new(),
        };
        format!("{}{condition} ORDER BY {} LIMIT {}", self.select, self.order, self.limits.rows)
    }

    /// Reads the rows with the given keys (those that still exist), in key
    /// order, in a transaction of its own; the chunk's `more` is false.
    pub async fn read_keys(
        &self,
        connection: &mut ReplicationConnection,
        keys: &[KeyText],
    ) -> Result<Chunk, SnapshotError> {
        let list = keys.iter().map(|key| self.key_literals(key)).collect::<Vec<_>>().join(", ");
        let sql = format!("{} WHERE ({}) IN ({list}) ORDER BY {}", self.select, self.order, self.order);
        let mut chunk = self.read(connection, &sql, format!("re-reading {} keys", keys.len())).await?;
        chunk.more = false;
        Ok(chunk)
    }

    /// Reads the chunk after `after` (from the start for `None`) in a
    /// transaction of its own over `connection`.
    pub async fn read_chunk(
        &self,
        connection: &mut ReplicationConnection,
        after: Option<&[String]>,
    ) -> Result<Chunk, SnapshotError> {
        let doing = match after {
            Some(_) => format!("reading the chunk after key ({}) = (…)", self.order),
            None => "reading the first chunk".to_owned(),
        };
        self.read(connection, &self.chunk_sql(after), doing).await
    }

    /// Runs `sql` (a select of the table's columns) in a `REPEATABLE READ`
    /// transaction with its snapshot.
    async fn read(
        &self,
        connection: &mut ReplicationConnection,
        sql: &str,
        doing: String,
    ) -> Result<Chunk, SnapshotError> {
        let table = &self.table.schema.table;
        let source_error = |doing: String| move |source| SnapshotError::Source { table: table.clone(), doing, source };
        connection
            .simple_query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(source_error("beginning a chunk's transaction".to_owned()))?;
        let read = async {
            let snapshot = connection
                .simple_query(&format!(
                    "SELECT pg_catalog.pg_current_snapshot()::text AS snapshot, \
                     (SELECT c.xmin::text FROM pg_catalog.pg_class c WHERE c.oid = {}) AS shape_version",
                    self.table.schema.oid.0
                ))
                .await
                .map_err(source_error("reading the chunk's snapshot".to_owned()))?;
            let visibility = snapshot.get(0, "snapshot").and_then(ReadVisibility::parse).ok_or_else(|| {
                SnapshotError::Unexpected { table: table.clone(), what: "pg_current_snapshot() unreadable".to_owned() }
            })?;
            let shape_version = snapshot.get(0, "shape_version").map(str::to_owned);
            let result = connection.simple_query(sql).await.map_err(source_error(doing))?;
            Ok::<_, SnapshotError>((visibility, shape_version, result))
        }
        .await;
        // A failed statement leaves the transaction aborted: end it either way.
        let ended = connection.simple_query("COMMIT").await;
        let (visibility, shape_version, result) = read?;
        ended.map_err(source_error("ending a chunk's transaction".to_owned()))?;
        if result.columns.len() != self.table.schema.columns.len() {
            return Err(SnapshotError::Unexpected {
                table: table.clone(),
                what: format!(
                    "{} columns read, {} expected (did the table change while it was copied?)",
                    result.columns.len(),
                    self.table.schema.columns.len()
                ),
            });
        }
        let read_rows = result.rows.len();
        let mut chunk = Chunk { visibility, shape_version, ..Chunk::default() };
        for values in result.rows {
            let row: Row = values
                .into_iter()
                .map(|value| match value {
                    Some(text) => ColumnValue::Text(Bytes::from(text)),
                    None => ColumnValue::Null,
                })
                .collect();
            chunk.bytes += row.iter().map(|value| value.as_bytes().map_or(0, <[u8]>::len)).sum::<usize>();
            chunk.rows.push(row);
            if chunk.bytes >= self.limits.bytes {
                break;
            }
        }
        chunk.more = read_rows == self.limits.rows || chunk.rows.len() < read_rows;
        chunk.last_key = match chunk.rows.last() {
            Some(row) => Some(self.key_of(row).ok_or_else(|| SnapshotError::Unexpected {
                table: table.clone(),
                what: "a key column of a row read is NULL or not text".to_owned(),
            })?),
            None => None,
        };
        Ok(chunk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visibility_parses_with_and_without_transactions_in_progress() {
        assert_eq!(
            ReadVisibility::parse("10:20:12,15"),
            Some(ReadVisibility { xmin: 10, xmax: 20, in_progress: vec![12, 15] })
        );
        assert_eq!(ReadVisibility::parse("7:7:"), Some(ReadVisibility { xmin: 7, xmax: 7, in_progress: vec![] }));
        assert_eq!(ReadVisibility::parse("7"), None);
        assert_eq!(ReadVisibility::parse("a:b:"), None);
    }
}
