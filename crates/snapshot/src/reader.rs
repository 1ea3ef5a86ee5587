//! The table reader: one chunk of a table at a time, in key order (or by
//! heap block range, [`Rows::Blocks`], for a table with a
//! [`crate::table::BlockLayout`]).
//!
//! Each chunk is one short `REPEATABLE READ` transaction:
//!
//! ```sql
//! SELECT c1, c2, … FROM t WHERE (k1, k2) > ('…'::type1, '…'::type2) ORDER BY k1, k2 LIMIT n
//! ```
//!
//! sent with its snapshot query, its commit and the status query of the
//! transactions its snapshot saw in progress as one message of several
//! statements (one round trip per chunk, which under load costs more than
//! the rows' own transfer), so no transaction stays open between chunks (the primary's vacuum is
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
use pg_replication::{QueryResult, ReplicationConnection, StatementOutput};
use pgfanout_core::{ColumnValue, Row};
use postgres_protocol::escape::escape_literal;

use crate::error::SnapshotError;
use crate::table::SnapshotTable;
use crate::watermark::key_text;

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
        ChunkLimits { rows: 20_000, bytes: 8 * 1024 * 1024 }
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
    /// Bytes of the rows as COPY sent them (values, separators, escapes).
    pub bytes: usize,
    /// What the read could see.
    pub visibility: ReadVisibility,
    /// The table's `pg_class` version the read saw (see
    /// [`SnapshotTable::shape_version`]); `None` if the table is gone.
    pub shape_version: Option<String>,
    /// Transactions of `visibility.in_progress` that had committed by the
    /// time the read's transaction ended (`pg_xact_status`).
    pub committed_in_progress: Vec<u64>,
}

/// Which rows a read takes.
#[derive(Debug, Clone, Copy)]
pub enum Rows<'a> {
    /// The next chunk after a key (from the start for `None`).
    After(Option<&'a [String]>),
    /// A chunk's key range read again: the rows after `after` (from the
    /// start for `None`) up to and including `through`, however many there
    /// are now (the chunks after it may be read already); never `more`.
    Range {
        /// The key the range starts after.
        after: Option<&'a [String]>,
        /// The range's last key.
        through: &'a [String],
    },
    /// The rows with these keys (those that still exist); never `more`.
    Keys(&'a [KeyText]),
    /// The rows in heap blocks `from..to` (a table with a
    /// [`crate::table::BlockLayout`]), in no particular order; `more` while
    /// `to` is below the layout's end. Never cut short by the byte limit.
    Blocks {
        /// The first block read.
        from: u64,
        /// The block after the last one read.
        to: u64,
    },
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
        key_text(row, &self.table.key_positions)
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

    /// The read of the chunk of blocks starting at block `from`; `None` for
    /// a table without a block layout.
    pub fn blocks_from(&self, from: u64) -> Option<Rows<'static>> {
        let layout = self.table.blocks.as_ref()?;
        Some(Rows::Blocks { from, to: from + layout.per_chunk })
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
        self.read(connection, Rows::Keys(keys), None).await
    }

    /// Reads the chunk after `after` (from the start for `None`) in a
    /// transaction of its own over `connection`.
    pub async fn read_chunk(
        &self,
        connection: &mut ReplicationConnection,
        after: Option<&[String]>,
    ) -> Result<Chunk, SnapshotError> {
        self.read(connection, Rows::After(after), None).await
    }

    /// Reads `rows` right after `mark` (one statement, a watermark's emit)
    /// ran and committed in a transaction of its own: all in one round trip.
    pub async fn read_after_mark(
        &self,
        connection: &mut ReplicationConnection,
        rows: Rows<'_>,
        mark: &str,
    ) -> Result<Chunk, SnapshotError> {
        self.read(connection, rows, Some(mark)).await
    }

    async fn read(
        &self,
        connection: &mut ReplicationConnection,
        rows: Rows<'_>,
        mark: Option<&str>,
    ) -> Result<Chunk, SnapshotError> {
        let fetched = self.fetch(connection, rows, mark).await?;
        self.parse(fetched).ok_or_else(|| self.unparsable())
    }

    /// Runs `mark` (if any), then the select of `rows` in a `REPEATABLE
    /// READ` transaction with its snapshot, then the status of the
    /// transactions the snapshot saw in progress: one simple query message
    /// of several statements, so a chunk costs one round trip. The rows
    /// stay as the lines COPY sent ([`TableReader::parse`] makes them rows):
    /// only the last one's key is read, so that the next chunk's read can
    /// start before this one is parsed.
    pub async fn fetch(
        &self,
        connection: &mut ReplicationConnection,
        rows: Rows<'_>,
        mark: Option<&str>,
    ) -> Result<FetchedChunk, SnapshotError> {
        let table = &self.table.schema.table;
        let (select, doing) = match rows {
            Rows::After(after) => (
                self.chunk_sql(after),
                match after {
                    Some(_) => format!("reading the chunk after key ({}) = (…)", self.order),
                    None => "reading the first chunk".to_owned(),
                },
            ),
            Rows::Range { after, through } => {
                let from = match after {
                    Some(key) => format!("({}) > {} AND ", self.order, self.key_literals(key)),
                    None => String::new(),
                };
                let sql = format!(
                    "{} WHERE {from}({}) <= {} ORDER BY {}",
                    self.select,
                    self.order,
                    self.key_literals(through),
                    self.order
                );
                (sql, format!("re-reading the chunk through key ({}) = (…)", self.order))
            }
            Rows::Keys(keys) => {
                let list = keys.iter().map(|key| self.key_literals(key)).collect::<Vec<_>>().join(", ");
                let sql = format!("{} WHERE ({}) IN ({list}) ORDER BY {}", self.select, self.order, self.order);
                (sql, format!("re-reading {} keys", keys.len()))
            }
            Rows::Blocks { from, to } => (
                format!("{} WHERE ctid >= '({from},0)'::tid AND ctid < '({to},0)'::tid", self.select),
                format!("reading blocks {from}..{to}"),
            ),
        };
        // The mark commits before the read's snapshot is taken (its first
        // statement). The snapshot is kept in a session setting so that the
        // status of its in-progress transactions is asked after the read's
        // transaction ended, in the same message.
        let mark = mark.map_or(String::new(), |mark| format!("BEGIN; {mark}; COMMIT; "));
        let sql = format!(
            "{mark}BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; \
             SELECT pg_catalog.pg_current_snapshot()::text AS snapshot, \
             (SELECT c.xmin::text FROM pg_catalog.pg_class c WHERE c.oid = {oid}) AS shape_version, \
             pg_catalog.set_config('pgfanout.chunk_snapshot', pg_catalog.pg_current_snapshot()::text, false) \
             AS kept; \
             COPY ({select}) TO STDOUT; \
             COMMIT; \
             SELECT x::text AS xid \
             FROM pg_catalog.pg_snapshot_xip(pg_catalog.current_setting('pgfanout.chunk_snapshot')::pg_snapshot) x \
             WHERE pg_catalog.pg_xact_status(x) = 'committed'",
            oid = self.table.schema.oid.0,
        );
        let mut results = match connection.simple_query_sets(&sql).await {
            Ok(results) => results,
            Err(source) => {
                // A failed statement leaves the read's transaction aborted.
                let _ = connection.simple_query("ROLLBACK").await;
                return Err(SnapshotError::Source { table: table.clone(), doing, source });
            }
        };
        let unexpected = |what: String| SnapshotError::Unexpected { table: table.clone(), what };
        let expected_sets = if mark.is_empty() { 3 } else { 4 };
        if results.len() != expected_sets {
            return Err(unexpected(format!(
                "{} result sets for a chunk's read, {expected_sets} expected",
                results.len()
            )));
        }
        let (
            Some(StatementOutput::Rows(statuses)),
            Some(StatementOutput::CopyOut(mut lines)),
            Some(StatementOutput::Rows(snapshot)),
        ) = (results.pop(), results.pop(), results.pop())
        else {
            return Err(unexpected("a chunk's read returned results of unexpected kinds".to_owned()));
        };
        // What's left is the mark's output, when it returned rows.
        let mark_output = match results.pop() {
            Some(StatementOutput::Rows(output)) => Some(output),
            _ => None,
        };
        let visibility = snapshot
            .get(0, "snapshot")
            .and_then(ReadVisibility::parse)
            .ok_or_else(|| unexpected("pg_current_snapshot() unreadable".to_owned()))?;
        let shape_version = snapshot.get(0, "shape_version").map(str::to_owned);
        let committed_in_progress =
            (0..statuses.rows.len()).filter_map(|row| statuses.get(row, "xid")?.parse().ok()).collect();
        let read_rows = lines.len();
        // Only a chunk read after a key may end early (the row crossing the
        // byte limit is its last): the next one starts after its last row.
        // A re-read must hold every row it asked for.
        let mut bytes = 0;
        if matches!(rows, Rows::After(_)) {
            if let Some(crossing) = lines.iter().position(|line| {
                bytes += line.len();
                bytes >= self.limits.bytes
            }) {
                lines.truncate(crossing + 1);
            }
        } else {
            bytes = lines.iter().map(Bytes::len).sum();
        }
        let more = match rows {
            Rows::After(_) => read_rows == self.limits.rows || lines.len() < read_rows,
            Rows::Range { .. } | Rows::Keys(_) => false,
            Rows::Blocks { to, .. } => self.table.blocks.as_ref().is_some_and(|layout| to < layout.end),
        };
        let last_key = match lines.last() {
            Some(line) => Some(
                copy_text_row(line.clone(), self.table.schema.columns.len())
                    .and_then(|row| self.key_of(&row))
                    .ok_or_else(|| unexpected("the key of the last row read is unreadable or NULL".to_owned()))?,
            ),
            None => None,
        };
        Ok(FetchedChunk { lines, last_key, more, bytes, visibility, shape_version, committed_in_progress, mark_output })
    }

    /// The rows of a fetched chunk; `None` when a row has not the table's
    /// columns (it changed while it was copied).
    pub fn parse(&self, fetched: FetchedChunk) -> Option<Chunk> {
        let FetchedChunk { lines, last_key, more, bytes, visibility, shape_version, committed_in_progress, .. } =
            fetched;
        let columns = self.table.schema.columns.len();
        let rows = lines.into_iter().map(|line| copy_text_row(line, columns)).collect::<Option<Vec<Row>>>()?;
        Some(Chunk { rows, last_key, more, bytes, visibility, shape_version, committed_in_progress })
    }

    /// The error of a fetched chunk [`TableReader::parse`] could not parse.
    pub fn unparsable(&self) -> SnapshotError {
        SnapshotError::Unexpected {
            table: self.table.schema.table.clone(),
            what: format!(
                "a row read has not {} columns (did the table change while it was copied?)",
                self.table.schema.columns.len()
            ),
        }
    }
}

/// A chunk as fetched: COPY's lines, not yet parsed into rows (see
/// [`TableReader::fetch`]).
#[derive(Debug, Clone)]
pub struct FetchedChunk {
    lines: Vec<Bytes>,
    /// The key of the last row, to resume after; `None` when empty.
    pub last_key: Option<KeyText>,
    /// Whether the table may hold rows after this chunk.
    pub more: bool,
    bytes: usize,
    visibility: ReadVisibility,
    /// The table's `pg_class` version the read saw.
    pub shape_version: Option<String>,
    committed_in_progress: Vec<u64>,
    /// The rows the mark statement (see [`TableReader::read_after_mark`])
    /// returned, if it was a query.
    pub mark_output: Option<QueryResult>,
}

#[cfg(test)]
impl FetchedChunk {
    /// A chunk without rows, for tests of what carries chunks around.
    pub(crate) fn without_rows(more: bool) -> FetchedChunk {
        FetchedChunk {
            lines: Vec::new(),
            last_key: None,
            more,
            bytes: 0,
            visibility: ReadVisibility::default(),
            shape_version: None,
            committed_in_progress: Vec::new(),
            mark_output: None,
        }
    }
}

/// One line of `COPY … TO STDOUT` in text format as a row of `columns`
/// values: tab-separated, `\N` for NULL, backslash escapes undone, so each
/// value is the type's output text exactly as a `DataRow` (and pgoutput)
/// carries it. A value without escapes shares the line's buffer. `None`
/// when the line has not `columns` values.
///
/// One pass over the line finds both separators and backslashes: COPY
/// writes a tab inside a value as `\t`, so every tab byte separates values,
/// and a backslash always starts an escape inside the value it is in.
fn copy_text_row(line: Bytes, columns: usize) -> Option<Row> {
    let length = line.strip_suffix(b"\n").map_or(line.len(), <[u8]>::len);
    let mut row = Vec::with_capacity(columns);
    let mut start = 0;
    let mut escaped = false;
    for at in memchr::memchr2_iter(b'\t', b'\\', &line[..length]).chain([length]) {
        if at < length && line[at] == b'\\' {
            escaped = true;
            continue;
        }
        if row.len() == columns {
            return None;
        }
        row.push(copy_text_value(&line, start, at, escaped));
        start = at + 1;
        escaped = false;
    }
    (row.len() == columns).then_some(row)
}

/// The value of `line[start..end]`, which holds a backslash if `escaped`.
fn copy_text_value(line: &Bytes, start: usize, end: usize, escaped: bool) -> ColumnValue {
    match (escaped, &line[start..end]) {
        (true, b"\\N") => ColumnValue::Null,
        (true, field) => ColumnValue::Text(Bytes::from(unescape_copy_text(field))),
        (false, _) => ColumnValue::Text(line.slice(start..end)),
    }
}

/// Undoes COPY's text escapes: `\\`, `\b`, `\f`, `\n`, `\r`, `\t`, `\v`
/// (the only ones COPY TO writes); any other escaped byte stands for itself.
fn unescape_copy_text(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut escaped = false;
    for &byte in bytes {
        if escaped {
            out.push(match byte {
                b'b' => 0x08,
                b'f' => 0x0c,
                b'n' => b'\n',
                b'r' => b'\r',
                b't' => b'\t',
                b'v' => 0x0b,
                other => other,
            });
            escaped = false;
        } else if byte == b'\\' {
            escaped = true;
        } else {
            out.push(byte);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn copy_text_lines_become_the_values_a_data_row_carries() {
        let row = copy_text_row(Bytes::from_static(b"1\ta\\tb\\\\c\\nd\t\\N\t\\\\N\t\n"), 5).unwrap();
        assert_eq!(
            row,
            vec![
                ColumnValue::Text(Bytes::from_static(b"1")),
                ColumnValue::Text(Bytes::from_static(b"a\tb\\c\nd")),
                ColumnValue::Null,
                ColumnValue::Text(Bytes::from_static(b"\\N")),
                ColumnValue::Text(Bytes::new()),
            ]
        );
        assert_eq!(copy_text_row(Bytes::from_static(b"1\t2\n"), 3), None);
        assert_eq!(copy_text_row(Bytes::from_static(b"1\t2\t3\n"), 2), None);
        // An escaped backslash ends its value; the tab after it separates.
        assert_eq!(
            copy_text_row(Bytes::from_static(b"a\\\\\tb\\N\t\\N"), 3),
            Some(vec![
                ColumnValue::Text(Bytes::from_static(b"a\\")),
                ColumnValue::Text(Bytes::from_static(b"bN")),
                ColumnValue::Null,
            ])
        );
        assert_eq!(unescape_copy_text(b"\\b\\f\\r\\v\\x"), b"\x08\x0c\r\x0bx");
    }

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
